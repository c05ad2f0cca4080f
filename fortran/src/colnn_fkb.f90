!> Reader of the text model files of the Fortran-Keras Bridge (FKB), so FKB users can bring their
!> networks. Every layer line becomes one layer in file order (an activation line is an activation
!> layer at that place); unknown activation names are errors, never a sigmoid.
module colnn_fkb
  use colnn_kinds, only: wp, dp, i8
  use colnn_status
  use colnn_strings, only: str, next_token, count_tokens, parse_int, parse_real_dp, real_to_str
  use colnn_textio, only: text_reader_t
  use colnn_spec, only: layer_spec_t
  use colnn_model_file, only: model_header_t, parse_number_row
  implicit none
  private

  public :: read_fkb_file

  !> FKB fixes the batch normalization epsilon at this value (it is part of its format).
  character(len=*), parameter :: FKB_BN_EPSILON = '0.001'
  !> The four vectors FKB writes per batch normalization layer, in its order.
  character(len=15), parameter :: BN_VECTORS(4) = [character(len=15) :: &
    'beta', 'gamma', 'moving_mean', 'moving_variance']

contains

  subroutine read_fkb_file(path, header, specs, stat, errmsg)
    character(len=*), intent(in) :: path
    type(model_header_t), intent(out) :: header
    type(layer_spec_t), allocatable, intent(out) :: specs(:)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    type(text_reader_t) :: r
    call r%open(path, stat, errmsg)
    if (stat /= 0) return
    call read_body(r, header, specs, stat, errmsg)
    call r%close()
    if (stat /= 0 .and. allocated(specs)) deallocate (specs)
  end subroutine read_fkb_file

  subroutine next_data_line(r, what, stat, errmsg)
    type(text_reader_t), intent(inout) :: r
    character(len=*), intent(in) :: what
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    logical :: eof
    call r%next_line(eof, stat, errmsg, skip_blank=.true.)
    if (stat /= 0) return
    if (eof) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%path//': truncated FKB file: end of file where '//what//' was expected'
    end if
  end subroutine next_data_line

  !> A size on an FKB layer line. FKB keeps layer sizes in a real array and its `save` writes
  !> them with list-directed output ('5.00000000'), so a real with an integral value is that
  !> size; anything else (5.5, 3e9, -2) is not.
  subroutine parse_fkb_size(text, size, ok)
    character(len=*), intent(in) :: text
    integer(i8), intent(out) :: size
    logical, intent(out) :: ok
    real(dp) :: value
    call parse_int(text, size, ok)
    if (.not. ok) then
      call parse_real_dp(text, value, ok, allow_d=.true.)
      ok = ok .and. value == aint(value) .and. abs(value) <= real(huge(1), dp)
      size = 0
      if (ok) size = int(value, i8)
    end if
    ok = ok .and. size >= 1 .and. size <= huge(1)
  end subroutine parse_fkb_size

  subroutine size_error(r, what, text, stat, errmsg)
    type(text_reader_t), intent(in) :: r
    character(len=*), intent(in) :: what, text
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    stat = COLNN_ERR_FORMAT
    errmsg = r%where()//': '//what//' must be a whole number in 1..'//str(huge(1))// &
             " (written as an integer, or as FKB writes it, a real such as 5.00000000), got '"// &
             text(1:min(len(text), 40))//"'"
  end subroutine size_error

  !> `size(values)` numbers that start on a new line and end at the end of a line; they may
  !> continue over several lines, as a Fortran list-directed read allows and as compilers that
  !> wrap long list-directed records (Intel's at 80 columns) write them.
  subroutine read_vector(r, values, what, stat, errmsg, eof_message)
    type(text_reader_t), intent(inout) :: r
    real(wp), intent(out) :: values(:)
    character(len=*), intent(in) :: what
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    character(len=*), intent(in), optional :: eof_message !! the error when the file ends before the vector
    integer :: got, first_line
    integer(i8) :: on_line
    logical :: eof
    if (present(eof_message)) then
      call r%next_line(eof, stat, errmsg, skip_blank=.true.)
      if (stat /= 0) return
      if (eof) then
        stat = COLNN_ERR_FORMAT
        errmsg = eof_message
        return
      end if
    else
      call next_data_line(r, what, stat, errmsg)
      if (stat /= 0) return
    end if
    first_line = r%line_no
    got = 0
    do
      if (index(r%buf(1:r%n), '*') > 0) then
        call read_repeats(r, values, got, what, first_line, stat, errmsg)
        if (stat /= 0) return
      else
        on_line = count_tokens(r%buf(1:r%n))
        if (got + on_line > size(values)) then
          call too_many(r, size(values), first_line, got + on_line, what, stat, errmsg)
          return
        end if
        call parse_number_row(r%buf(1:r%n), int(on_line), 'float64', &
                              values(got + 1:got + on_line), r%where()//': '//what, stat, errmsg, &
                              allow_d=.true.)
        if (stat /= 0) return
        got = got + int(on_line)
      end if
      if (got == size(values)) return
      call next_data_line(r, str(size(values) - got)//' more values of '//what//' (from line '// &
                          str(first_line)//')', stat, errmsg)
      if (stat /= 0) return
    end do
  end subroutine read_vector

  subroutine too_many(r, wanted, first_line, found, what, stat, errmsg)
    type(text_reader_t), intent(in) :: r
    integer, intent(in) :: wanted, first_line
    integer(i8), intent(in) :: found
    character(len=*), intent(in) :: what
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    stat = COLNN_ERR_FORMAT
    errmsg = r%where()//': '//what//': expected '//str(wanted)//' values from line '// &
             str(first_line)//', found '//str(found)//' by the end of this line'
  end subroutine too_many

  !> The values of the current line, which holds repeats: `R*C` is R copies of C, as Intel's
  !> list-directed output writes repeated values. A null value (`R*`) would leave a parameter
  !> unset and is refused.
  subroutine read_repeats(r, values, got, what, first_line, stat, errmsg)
    type(text_reader_t), intent(in) :: r
    real(wp), intent(inout) :: values(:)
    integer, intent(inout) :: got
    character(len=*), intent(in) :: what
    integer, intent(in) :: first_line
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: pos, first, last, star
    integer(i8) :: repeat, found
    real(dp) :: value
    logical :: ok
    stat = COLNN_OK
    ! count first, so that a line with too many values says how many
    found = got
    pos = 1
    do
      call next_token(r%buf(1:r%n), pos, first, last)
      if (last < first) exit
      star = index(r%buf(first:last), '*')
      repeat = 1
      if (star > 0) then
        call parse_int(r%buf(first:first + star - 2), repeat, ok)
        if (.not. ok .or. repeat < 1 .or. star == last - first + 1) then
          stat = COLNN_ERR_FORMAT
          errmsg = r%where()//': '//what//": '"//r%buf(first:min(last, first + 40))// &
                   "' is not a repeat count R*C with R >= 1 and a number C"
          return
        end if
      end if
      found = found + repeat
    end do
    if (found > size(values)) then
      call too_many(r, size(values), first_line, found, what, stat, errmsg)
      return
    end if
    pos = 1
    do
      call next_token(r%buf(1:r%n), pos, first, last)
      if (last < first) exit
      star = index(r%buf(first:last), '*')
      repeat = 1
      if (star > 0) call parse_int(r%buf(first:first + star - 2), repeat, ok)
      call parse_real_dp(r%buf(first + star:last), value, ok, allow_d=.true.)
      if (.not. ok) then
        stat = COLNN_ERR_FORMAT
        errmsg = r%where()//': '//what//": '"//r%buf(first:min(last, first + 40))// &
                 "' is not a finite number"
        return
      end if
      values(got + 1:got + repeat) = real(value, wp)
      got = got + int(repeat)
    end do
  end subroutine read_repeats

  subroutine read_body(r, header, specs, stat, errmsg)
    type(text_reader_t), intent(inout) :: r
    type(model_header_t), intent(inout) :: header
    type(layer_spec_t), allocatable, intent(out) :: specs(:)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer(i8) :: n_lines, ival
    integer :: k, pos, first, last, n_layers, width, i
    character(len=:), allocatable :: lkind, val, act
    character(len=32), allocatable :: kinds(:)
    integer, allocatable :: widths(:), n_ins(:)
    real(wp), allocatable :: values(:), flat(:)
    real(dp) :: rv
    logical :: ok, eof

    call next_data_line(r, 'the number of layer lines', stat, errmsg)
    if (stat /= 0) return
    call parse_int(trim(adjustl(r%buf(1:r%n))), n_lines, ok)
    if (.not. ok .or. n_lines < 2 .or. n_lines > r%file_size / 4 + 2) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%where()//': an FKB file starts with its number of layer lines (an integer '// &
               '>= 2 that fits the file), found '''//r%buf(1:min(r%n, 40))//''''
      return
    end if
    header%precision = 'float64'
    allocate (character(len=256) :: header%meta(1))
    header%meta(1) = 'source FKB text file '//r%path
    allocate (specs(n_lines - 1), kinds(n_lines - 1), widths(n_lines - 1), n_ins(n_lines - 1))
    n_layers = 0
    width = 0
    do k = 1, int(n_lines)
      call next_data_line(r, 'layer line '//str(k)//' of '//str(n_lines), stat, errmsg)
      if (stat /= 0) return
      pos = 1
      call next_token(r%buf(1:r%n), pos, first, last)
      lkind = r%buf(first:last)
      call next_token(r%buf(1:r%n), pos, first, last)
      val = r%buf(first:max(first - 1, last))
      if (len(val) == 0) then
        stat = COLNN_ERR_FORMAT
        errmsg = r%where()//": FKB layer line '"//lkind//"' has no value"
        return
      end if
      if (count_tokens(r%buf(1:r%n)) /= 2) then
        stat = COLNN_ERR_FORMAT
        errmsg = r%where()//": an FKB layer line is 'KIND VALUE', found '"// &
                 r%buf(1:min(r%n, 60))//"'"
        return
      end if
      if (k == 1) then
        if (lkind /= 'input') then
          stat = COLNN_ERR_FORMAT
          errmsg = r%where()//": the first FKB layer line must be 'input N', found '"// &
                   r%buf(1:min(r%n, 60))//"'"
          return
        end if
        call parse_fkb_size(val, ival, ok)
        if (.not. ok) then
          call size_error(r, 'input size', val, stat, errmsg)
          return
        end if
        header%n_inputs = int(ival)
        width = int(ival)
        cycle
      end if
      n_layers = n_layers + 1
      associate (s => specs(n_layers))
        s%source = r%path
        s%line = r%line_no
        kinds(n_layers) = lkind
        n_ins(n_layers) = width
        ! every layer but dense (a unit count) and dropout (kept as text) has one real value
        if (lkind /= 'dense' .and. lkind /= 'dropout') then
          call parse_real_dp(val, rv, ok, allow_d=.true.)
          if (.not. ok) then
            stat = COLNN_ERR_FORMAT
            errmsg = r%where()//": bad value '"//val//"' for FKB layer '"//lkind//"'"
            return
          end if
        end if
        select case (lkind)
        case ('dense')
          call parse_fkb_size(val, ival, ok)
          if (.not. ok) then
            call size_error(r, 'dense units', val, stat, errmsg)
            return
          end if
          ! its biases alone need ival values: refuse before anything is allocated
          if (ival > r%file_size / 2 + 1) then
            stat = COLNN_ERR_FORMAT
            errmsg = r%where()//': '//str(ival)//' units need more biases than a file of '// &
                     str(r%file_size)//' bytes holds'
            return
          end if
          s%type_name = 'dense'
          call s%set_text('name', 'dense_'//str(n_layers))
          call s%set_int('units', int(ival))
          call s%set_logical('use_bias', .true.)
          call s%set_text('activation', 'linear')
          width = int(ival)
        case ('dropout')
          s%type_name = 'dropout'
          call s%set_text('name', 'dropout_'//str(n_layers))
          call s%set_text('rate', val)
        case ('batchnormalization')
          s%type_name = 'batch_normalization'
          call s%set_text('name', 'batch_normalization_'//str(n_layers))
          call s%set_text('epsilon', FKB_BN_EPSILON)
          call s%set_logical('center', .true.)
          call s%set_logical('scale', .true.)
        case default
          select case (lkind)
          case ('linear', 'relu', 'tanh', 'sigmoid', 'softmax', 'softplus', 'selu', 'swish', 'exponential')
            act = lkind
          case ('leakyrelu')
            act = 'leaky_relu negative_slope='//real_to_str(real(rv, wp))
          case ('elu')
            act = 'elu alpha='//real_to_str(real(rv, wp))
          case default
            stat = COLNN_ERR_UNSUPPORTED
            errmsg = r%where()//": unknown FKB layer or activation '"//lkind//"'"
            return
          end select
          s%type_name = 'activation'
          call s%set_text('name', 'activation_'//str(n_layers))
          call s%set_text('activation', act)
        end select
        widths(n_layers) = width
      end associate
    end do
    header%n_layers = n_layers
    header%n_outputs = width
    if (n_layers < 1) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%path//': the FKB file has no layers after its input'
      return
    end if

    call next_data_line(r, 'the learning rate', stat, errmsg)
    if (stat /= 0) return
    call parse_real_dp(r%buf(1:r%n), rv, ok, allow_d=.true.)
    if (.not. ok) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%where()//": expected the learning rate, found '"//r%buf(1:min(r%n, 40))//"'"
      return
    end if
    header%meta = [character(len=256) :: header%meta(1), 'learning_rate '//trim(adjustl(r%buf(1:r%n)))]

    ! biases: one vector per dense layer, in order
    do i = 1, n_layers
      if (kinds(i) /= 'dense') cycle
      allocate (values(widths(i)))
      if (i == findloc(kinds(1:n_layers), 'dense', dim=1)) then
        ! FKB's own reader also takes a file that ends after the learning rate and fills the
        ! weights with random numbers (to train in Fortran); running that as a model would
        ! evaluate weights nobody trained, so it is refused
        call read_vector(r, values, 'the biases of FKB dense layer '//str(i), stat, errmsg, &
                         eof_message=r%path//': the FKB file has no weights: it ends after '// &
                         'the learning rate (an architecture-only file, for which FKB draws '// &
                         'random weights to train in Fortran); a model to run needs its '// &
                         'biases and weights')
      else
        call read_vector(r, values, 'the biases of FKB dense layer '//str(i), stat, errmsg)
      end if
      if (stat /= 0) return
      call specs(i)%add_tensor('bias', 1, [widths(i), 1], values, r%line_no)
    end do
    ! weights: one vector per dense layer, the Keras kernel transposed and flattened, which
    ! column-major reading puts in w(in, out); the colnn tensor is kernel (in, out) row-major
    do i = 1, n_layers
      if (kinds(i) /= 'dense') cycle
      if (int(n_ins(i), i8) * widths(i) > r%file_size / 2 + 1) then
        call next_data_line(r, 'the weights of dense layer '//str(i), stat, errmsg)
        if (stat /= 0) return
        stat = COLNN_ERR_FORMAT
        errmsg = r%where()//': dense layer '//str(i)//' needs more weights than the file holds'
        return
      end if
      allocate (values(n_ins(i) * widths(i)))
      call read_vector(r, values, 'the weights of FKB dense layer '//str(i), stat, errmsg)
      if (stat /= 0) return
      flat = reshape(transpose(reshape(values, [n_ins(i), widths(i)])), [size(values)])
      deallocate (values)
      call move_alloc(flat, values)
      call specs(i)%add_tensor('kernel', 2, [n_ins(i), widths(i)], values, r%line_no)
    end do
    ! batch normalization: beta, gamma, moving mean, moving variance
    do i = 1, n_layers
      if (kinds(i) /= 'batchnormalization') cycle
      ! the width comes from 'input N' or a dense layer: check it against the file first
      if (widths(i) > r%file_size / 2 + 1) then
        call next_data_line(r, 'batch normalization parameters of layer '//str(i), stat, errmsg)
        if (stat /= 0) return
        stat = COLNN_ERR_FORMAT
        errmsg = r%where()//': batch normalization layer '//str(i)//' needs '// &
                 str(widths(i))//' values a vector, more than the file holds'
        return
      end if
      do k = 1, 4
        allocate (values(widths(i)))
        call read_vector(r, values, BN_VECTORS(k)//' of FKB batch normalization layer '//str(i), &
                         stat, errmsg)
        if (stat /= 0) return
        call specs(i)%add_tensor(BN_VECTORS(k), 1, [widths(i), 1], values, r%line_no)
      end do
    end do
    call r%next_line(eof, stat, errmsg, skip_blank=.true.)
    if (stat /= 0) return
    if (.not. eof) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%where()//": unexpected content after the last parameter vector: '"// &
               r%buf(1:min(r%n, 40))//"'"
      return
    end if
    specs = specs(1:n_layers)
  end subroutine read_body
end module colnn_fkb
