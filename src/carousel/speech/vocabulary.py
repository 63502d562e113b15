"""The word vocabulary of the ``speech-words`` task: 320 common English words (3-8 letters,
no proper names, no abbreviations), chosen by hand so that espeak-ng says each as a word."""

__all__ = ["WORDS"]

WORDS: tuple[str, ...] = tuple(
    """
    able about above across act add after again against age ago air all almost alone along
    also always among and animal answer any apple area arm army around art ask away baby back
    bad bag ball bank base bear beat bed before begin behind best better between big bird
    black blood blue board boat body book both box boy bread break bring brother brown build
    burn busy buy call came can car card care carry case cat catch cause cell center chair
    change child city class clean clear close cloud cold color come common cook cool corn
    cost could count country course cover cross cry cup cut dance dark day dead deal dear deep
    desk did dinner doctor dog door down draw dream dress drink drive drop dry during each
    early earth east easy eat egg end enough even evening ever every eye face fact fall family
    far farm fast father fear feel few field fight fill find fine fire first fish five floor
    flower fly follow food foot force forest form four free fresh friend from front fruit
    full game garden gate give glass gold good grass great green ground group grow hair half
    hand happy hard have head hear heart heavy help here high hill hold home hope horse hot
    hour house huge idea inside iron island join jump just keep kind king kitchen know lake
    land large last late laugh lead learn leave left less letter light like line lion list
    little live long look lost loud love low machine make man many map mark market may meet
    middle milk mind minute money month moon more morning mother mountain mouth move much
    music must name near need never new next nice night noise north nose note nothing now
    number ocean off office often old once only open order other our out over page paint
    paper park part party pass pay people picture piece place plain plan plant play point
    poor power pull push put queen question quick quiet rain read ready real red remember
    rest rich ride right river road rock room round rule run safe salt same sand save say
    school sea season seat second see sell send seven shape sharp ship shoe short show side
    sign silver simple sing sister sit six size sky sleep slow small smile snow soft some
    song soon sound south space speak special spring square stand star start station stay
    step still stone stop story street strong student study such sugar summer sun table
    take talk tall teacher ten test than thank that then there thick thin thing think three
    through time today together too top touch town train tree true try turn two under until
    upon use valley very voice wait walk wall want warm wash watch water wave way weather
    week well west what wheel when white whole wide wild will wind window winter wish with
    woman wood word work world write year yellow young
    """.split()
)
